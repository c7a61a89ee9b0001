"""Read a flightlm stream from Python with pyarrow.flight: the way a PyTorch trainer uses it.

    python scripts/read_stream.py --pipeline grpc://127.0.0.1:50051 --seq-len 128 --batch-size 32 \
        [--split train|valid] [--epochs 1] [--max-blocks N] [--dump blocks.jsonl] [--cursor JSON] \
        [--shard RANK/WORLD] [--tls-ca ca.pem] [--token-file token]

The request is the JSON of docs/protocol.md: sent first as a FlightDescriptor to GetFlightInfo
(schema, contract version, tokenizer), then the endpoint's ticket opens the stream. Each record
batch arrives as Arrow: the
`input_ids` FixedSizeList column becomes a [rows, seq_len] numpy array with no copy, ready for
`torch.from_numpy`. Ends with one JSON summary line whose `cursor` resumes right after the last
block read: store it with your checkpoint and pass it back (`--cursor`) to continue exactly there.

With PyTorch DDP each rank reads `--shard RANK/WORLD`: blocks RANK, RANK+WORLD, ... of the global
sequence. The pipeline tokenizes the corpus once for all the ranks of a job (docs/protocol.md,
*Shards*).
"""

import argparse
import json
import time

import numpy as np
import pyarrow.flight as flight

CONTRACT_VERSION = 1


def describe(client, options, split, seq_len, batch_size, epochs, cursor=None, shard=None):
    """Asks the pipeline to describe the stream (GetFlightInfo) before opening it."""
    request = {
        "version": CONTRACT_VERSION,
        "split": split,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "epochs": epochs,
    }
    if cursor is not None:
        request["cursor"] = cursor
    if shard is not None:
        request["shard"] = {"index": shard[0], "count": shard[1]}
    descriptor = flight.FlightDescriptor.for_command(json.dumps(request))
    info = client.get_flight_info(descriptor, options)
    description = json.loads(info.app_metadata)
    if description["contract_version"] != CONTRACT_VERSION:
        raise SystemExit(f"pipeline speaks contract {description['contract_version']}")
    return info, description


def blocks(reader, seq_len):
    """Yields (input_ids [rows, seq_len] int32, block_seq [rows] uint64, batch) per batch."""
    for chunk in reader:
        batch = chunk.data
        # flatten() honours slice offsets; .values would not.
        ids = batch.column("input_ids").flatten().to_numpy().reshape(-1, seq_len)
        yield ids, batch.column("block_seq").to_numpy(), batch


def cursor_after(batch, row):
    """The cursor that resumes right after `row` of `batch` (docs/protocol.md, Resuming)."""
    return {
        "state": json.loads(batch.column("resume_state")[row].as_py()),
        "skip": batch.column("resume_skip")[row].as_py(),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--pipeline", required=True,
        help="grpc://host:port (http:// also accepted); grpc+tls:// or https:// for TLS",
    )
    parser.add_argument("--tls-ca", help="PEM CA certificate of a TLS pipeline")
    parser.add_argument("--token-file", help="file holding the pipeline's token")
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--split", default="train", choices=["train", "valid"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-blocks", type=int)
    parser.add_argument("--dump", help="write one JSON array of ids per block, per line")
    parser.add_argument("--cursor", help="resume after this cursor (JSON, from a previous summary)")
    parser.add_argument("--shard", help="RANK/WORLD: read blocks RANK, RANK+WORLD, ... only")
    args = parser.parse_args()
    cursor = json.loads(args.cursor) if args.cursor else None
    shard = tuple(int(part) for part in args.shard.split("/")) if args.shard else None
    rank, world = shard if shard else (0, 1)

    location = args.pipeline.replace("https://", "grpc+tls://", 1).replace("http://", "grpc://", 1)
    tls_root_certs = open(args.tls_ca, "rb").read() if args.tls_ca else None
    client = flight.connect(location, tls_root_certs=tls_root_certs)
    options = flight.FlightCallOptions()
    if args.token_file:
        # Handshake with the token as a Basic password; every call then carries the bearer.
        token = open(args.token_file).read().strip()
        header = client.authenticate_basic_token("reader", token)
        options = flight.FlightCallOptions(headers=[header])
    started = time.perf_counter()
    info, description = describe(
        client, options, args.split, args.seq_len, args.batch_size, args.epochs, cursor, shard
    )
    reader = client.do_get(info.endpoints[0].ticket, options)
    tokenizer = json.loads(reader.schema.metadata[b"flightlm.tokenizer"])
    if tokenizer != description["tokenizer"] or reader.schema != info.schema:
        raise SystemExit("the stream does not match its description")
    dump = open(args.dump, "w") if args.dump else None
    total = 0
    last_seq = -1 if cursor is None else cursor["state"]["block_seq"] + cursor["skip"] - 1
    for ids, block_seq, batch in blocks(reader, args.seq_len):
        if args.max_blocks is not None:
            ids, block_seq = ids[: args.max_blocks - total], block_seq[: args.max_blocks - total]
        # Sequence numbers are consecutive within the shard: a gap would mean a lost block.
        first = last_seq + 1 + (rank - (last_seq + 1)) % world
        expected = np.arange(first, first + world * len(block_seq), world, dtype=np.uint64)
        if not np.array_equal(block_seq, expected):
            raise SystemExit(f"block_seq jumped after {last_seq}: got {block_seq[:3]}...")
        if len(block_seq) > 0:
            last_seq = int(block_seq[-1])
        if dump:
            for row in ids:
                dump.write(json.dumps(row.tolist(), separators=(",", ":")) + "\n")
        total += len(ids)
        if len(ids) > 0:
            cursor = cursor_after(batch, len(ids) - 1)
        if args.max_blocks is not None and total >= args.max_blocks:
            break
    if dump:
        dump.close()
    seconds = time.perf_counter() - started
    print(json.dumps({
        "blocks": total,
        "tokens": total * args.seq_len,
        "seconds": seconds,
        "tokenizer": tokenizer,
        "cursor": cursor,
    }))


if __name__ == "__main__":
    main()
