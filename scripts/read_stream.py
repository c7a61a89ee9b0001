"""Read a flightlm stream from Python with pyarrow.flight: the way a PyTorch trainer uses it.

    python scripts/read_stream.py --pipeline grpc://127.0.0.1:50051 --seq-len 128 --batch-size 32 \
        [--split train|valid] [--epochs 1] [--max-blocks N] [--dump blocks.jsonl] [--cursor JSON] \
        [--shard RANK/WORLD] [--tls-ca ca.pem] [--token-file token] [--retry-s 60]

A command-line front of python/flightlm_stream.py (`BlockReader`): the request is the JSON of
docs/protocol.md, sent first as a FlightDescriptor to GetFlightInfo (schema, contract version,
tokenizer), then the endpoint's ticket opens the stream. Each record batch arrives as Arrow: the
`input_ids` FixedSizeList column becomes a [rows, seq_len] numpy array with no copy, ready for
`torch.from_numpy`. Ends with one JSON summary line whose `cursor` resumes right after the last
block read: store it with your checkpoint and pass it back (`--cursor`) to continue exactly there.
Through outages of up to `--retry-s` seconds it reconnects and continues after the last block
(`reconnections` in the summary).

With PyTorch DDP each rank reads `--shard RANK/WORLD`: blocks RANK, RANK+WORLD, ... of the global
sequence. The pipeline tokenizes the corpus once for all the ranks of a job (docs/protocol.md,
*Shards*).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from flightlm_stream import BlockReader, cursor_after  # noqa: E402


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
    parser.add_argument("--retry-s", type=float, default=60.0,
                        help="how long to keep reconnecting to an unreachable pipeline")
    args = parser.parse_args()
    cursor = json.loads(args.cursor) if args.cursor else None
    shard = tuple(int(part) for part in args.shard.split("/")) if args.shard else None
    rank, world = shard if shard else (0, 1)

    reader = BlockReader(
        args.pipeline, args.seq_len, batch_size=args.batch_size, split=args.split,
        epochs=args.epochs, shard=shard, tls_ca=args.tls_ca, token_file=args.token_file,
        retry_s=args.retry_s,
        state={"cursor": cursor, "split": args.split, "seq_len": args.seq_len,
               "shard": list(shard) if shard else None},
    )
    started = time.perf_counter()
    dump = open(args.dump, "w") if args.dump else None
    total = 0
    last_seq = -1 if cursor is None else cursor["state"]["block_seq"] + cursor["skip"] - 1
    for ids, block_seq, batch in reader.batches():
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
        "tokenizer": reader.tokenizer,
        "reconnections": reader.reconnections,
        "cursor": cursor,
    }))


if __name__ == "__main__":
    main()
