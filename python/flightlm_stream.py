"""Token blocks from a flightlm pipeline, for PyTorch trainers: HF `Trainer`, plain loops, DDP.

    from flightlm_stream import BlockReader
    reader = BlockReader("grpc://127.0.0.1:50051", seq_len=128)
    for block in reader:            # numpy int32 [seq_len], in stream order
        ...
    state = reader.state_dict()     # store it with the checkpoint
    BlockReader("grpc://127.0.0.1:50051", seq_len=128, state=state)   # continues right after

A reader asks for one split (`train` repeats until closed unless `epochs` is given; `valid` is
one pass), optionally one shard of a data-parallel job (`shard=(rank, world)`: blocks rank,
rank+world, ... of the global sequence; the pipeline tokenizes once for all ranks). When the
pipeline goes away or the link breaks, it reconnects with exponential backoff for up to
`retry_s` seconds and continues after the last block it yielded, so nothing is lost or repeated.
`pipeline` may name several replicas serving the same corpus ("URL1,URL2" or a list): when the
one it reads from is UNAVAILABLE the reader continues at once on the next one that serves the
same corpus fingerprint (a replica serving another corpus is refused, named, and not asked
again); `return_to_first()` brings it back to the first replica at its next batch.
`state_dict()` is what to checkpoint: the stream cursor of docs/protocol.md, *Resuming*.
`reader.source` names the source (the stream's `source` column) of the block last yielded;
`weights={"books": 0.7, "web": 0.3}` gives the stream mixture weights of its own, which the
pipeline's `set-weight` does not move and which its cursors carry.

`reader.tokenizer` describes the ids (contract version 2): `vocab_size`, the `pad_id`, `bos_id`,
`eos_id`, `unk_id`, `mask_id`, `cls_id`, `sep_id` the tokenizer has (None for roles it lacks),
and `special_ids`, every id an MLM collator must leave alone. With `document_starts=True` each
row comes with where its documents begin: the reader yields `(ids, starts)` pairs, and
`position_ids(starts, seq_len)` turns them into positions that restart at 0 at every document.

With torch installed, `FlightlmDataset` wraps a reader as a `torch.utils.data.IterableDataset`
yielding `{"input_ids": LongTensor[seq_len]}`, the rows `DataCollatorForLanguageModeling` takes
(plus `"position_ids"` with `document_starts=True`, as transformers' `DataCollatorWithFlattening`
gives them, and `"source"`, the source's name, with `sources=True`; a RoBERTa-style model
numbers positions from `pad_token_id + 1`, so add that);
with `split="valid"` it is an eval dataset, read from the start of the split at every pass.
Data-parallel: in a DDP loop of your own, give each rank `shard=(rank, world)`. Under HF
`Trainer` (accelerate) leave `shard` unset: for iterable datasets accelerate has rank 0 read
every batch and hand each rank its slice, so a sharded rank 0 would train on 1/world of the
stream. Use it with the
DataLoader's default `num_workers=0`: the pipeline process does the tokenizing, decoding a batch
is zero-copy, and the dataset's `state_dict()` is then the position of the DataLoader. A
DataLoader may read ahead of the step it trains (HF `Trainer` does, by one batch):
`state_dict(rows=N)` is the position after the first N rows instead. `FlightlmStateCallback`
does this for HF `Trainer`, saving the position of the last trained block into each checkpoint
(scripts/hf-trainer-stream.sh checks that a resumed Trainer trains on exactly the blocks the
uninterrupted one does).

Needs pyarrow and numpy only (torch for `FlightlmDataset`).
"""

import collections
import json
import os
import time

import numpy as np
import pyarrow.flight as flight

CONTRACT_VERSION = 2

# What a broken connection or an absent pipeline looks like; everything else (a refused request,
# a failed corpus, a bad token) is final.
RETRYABLE = (
    flight.FlightUnavailableError,
    flight.FlightTimedOutError,
    flight.FlightInternalError,
    flight.FlightCancelledError,
)
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
# Record batches kept so that `state_dict(rows=...)` can name a row a DataLoader has read past.
RECENT_BATCHES = 16
# The file `FlightlmStateCallback` writes into each HF Trainer checkpoint.
STATE_FILE = "flightlm_stream_state.json"


def request_json(split, seq_len, batch_size, epochs=None, cursor=None, shard=None,
                 document_starts=False, weights=None):
    """The stream request of docs/protocol.md."""
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
    if document_starts:
        request["document_starts"] = True
    if weights is not None:
        request["weights"] = dict(weights)
    return json.dumps(request)


def position_ids(starts, seq_len):
    """Per token of a block, its position within its document (0 at every document start, and
    at the block's first token, which may continue a document begun in an earlier block)."""
    positions = np.arange(seq_len, dtype=np.int64)
    begins = np.zeros(seq_len, dtype=np.int64)
    begins[np.asarray(starts, dtype=np.int64)] = np.asarray(starts, dtype=np.int64)
    return positions - np.maximum.accumulate(begins)


def cursor_after(batch, row):
    """The cursor that resumes right after `row` of `batch` (docs/protocol.md, Resuming)."""
    return {
        "state": json.loads(batch.column("resume_state")[row].as_py()),
        "skip": batch.column("resume_skip")[row].as_py(),
    }


class ReplicaRefused(RuntimeError):
    """A pipeline replica serves another corpus than the stream reads."""


def replica_urls(pipeline):
    """The replica URLs of `pipeline`: one URL, "URL1,URL2,...", or a list of URLs."""
    urls = pipeline.split(",") if isinstance(pipeline, str) else list(pipeline)
    urls = [url.strip() for url in urls if url.strip()]
    if not urls:
        raise ValueError(f"no pipeline URL in {pipeline!r}")
    return urls


def location_of(url):
    """pyarrow's spelling of a pipeline URL: http:// and https:// as grpc:// and grpc+tls://."""
    return url.replace("https://", "grpc+tls://", 1).replace("http://", "grpc://", 1)


class BlockReader:
    """The blocks of one split of a flightlm pipeline, one numpy int32 row of `seq_len` ids at a
    time; resumable through `state_dict()`, reconnecting through outages of up to `retry_s`."""

    def __init__(self, pipeline, seq_len, batch_size=256, split="train", epochs=None,
                 shard=None, state=None, tls_ca=None, token_file=None, retry_s=60.0,
                 document_starts=False, weights=None):
        self.pipeline = pipeline
        # The stream's own mixture weights ({source: weight}); None follows the pipeline's.
        self.weights = weights
        # The source (the stream's `source` column) of the block last yielded, None if unnamed.
        self.source = None
        self.document_starts = document_starts
        self.replicas = replica_urls(pipeline)
        # The replica read from, the corpus fingerprint the stream reads (known from a cursor or
        # the first replica's answer), why replicas were refused, and the stream moves between
        # replicas so far.
        self.replica = 0
        self.fingerprint = None
        self.refused = {}
        self.failovers = 0
        self._back_to_first = False
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.split = split
        self.epochs = epochs
        self.shard = tuple(shard) if shard is not None else None
        self.tls_ca = tls_ca
        self.token_file = token_file
        self.retry_s = retry_s
        self.tokenizer = None
        self.reconnections = 0
        self._cursor = None
        # The batch and row of the last block yielded; its cursor is built only when asked for.
        self._last = None
        # Rows yielded since the reader started (or loaded a state), the cursor it started at,
        # and the latest record batches with the row number of their first row.
        self._rows = 0
        self._start_cursor = None
        self._recent = collections.deque(maxlen=RECENT_BATCHES)
        if state is not None:
            self.load_state_dict(state)

    def state_dict(self, rows=None):
        """Where the stream continues: after the last block this reader yielded, or after its
        first `rows` blocks (counted from where it started) when a consumer has read ahead of
        what it trained on; `rows` may lag the blocks yielded by up to RECENT_BATCHES batches."""
        return {"cursor": self.cursor if rows is None else self._cursor_after_rows(rows),
                "split": self.split, "seq_len": self.seq_len,
                "shard": list(self.shard) if self.shard else None}

    def _cursor_after_rows(self, rows):
        if rows == self._rows:
            return self.cursor
        if rows == 0:
            return self._start_cursor
        for first_row, batch in self._recent:
            if first_row <= rows - 1 < first_row + batch.num_rows:
                return cursor_after(batch, rows - 1 - first_row)
        raise ValueError(f"row {rows} is not among the latest {RECENT_BATCHES} batches "
                         f"(this reader yielded {self._rows} rows)")

    def load_state_dict(self, state):
        for key in ("split", "seq_len"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"the state is of {key} {state.get(key)!r}, "
                                 f"this reader reads {getattr(self, key)!r}")
        shard = tuple(state["shard"]) if state.get("shard") else None
        if shard != self.shard:
            raise ValueError(f"the state is of shard {shard}, this reader reads {self.shard}")
        self._cursor, self._last = state.get("cursor"), None
        self._rows, self._start_cursor = 0, self._cursor
        self._recent.clear()
        if self._cursor is not None:
            self.fingerprint = self._cursor["state"]["fingerprint"]

    def return_to_first(self):
        """Continue on the first replica from the next batch on (e.g. once it was restarted)."""
        self._back_to_first = True

    @property
    def url(self):
        """The replica the reader reads from now."""
        return self.replicas[self.replica]

    def _fail_over(self, tried):
        """Moves to the next replica not refused; False when all were tried since the last batch
        (time to back off)."""
        usable = [index for index in range(len(self.replicas)) if index not in self.refused]
        if not usable:
            raise RuntimeError("no pipeline replica serves this stream: "
                               + "; ".join(self.refused.values()))
        for step in range(1, len(self.replicas) + 1):
            candidate = (self.replica + step) % len(self.replicas)
            if candidate not in self.refused:
                self.replica = candidate
                break
        self.failovers += 1
        return tried < len(usable)

    @property
    def cursor(self):
        if self._last is not None:
            self._cursor, self._last = cursor_after(*self._last), None
        return self._cursor

    def _connect(self):
        tls_root_certs = open(self.tls_ca, "rb").read() if self.tls_ca else None
        client = flight.connect(location_of(self.url), tls_root_certs=tls_root_certs)
        options = flight.FlightCallOptions()
        if self.token_file:
            # The token as a Basic password; every call then carries the bearer header.
            token = open(self.token_file).read().strip()
            header = client.authenticate_basic_token("reader", token)
            options = flight.FlightCallOptions(headers=[header])
        return client, options

    def _open(self):
        """Describes the stream (GetFlightInfo), then opens it after the current cursor."""
        client, options = self._connect()
        command = request_json(self.split, self.seq_len, self.batch_size, self.epochs,
                               self.cursor, self.shard, self.document_starts, self.weights)
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command), options)
        description = json.loads(info.app_metadata)
        if len(self.replicas) > 1:
            served = description["fingerprint"]
            if self.fingerprint is None:
                self.fingerprint = served
            elif served != self.fingerprint:
                why = (f"pipeline {self.url} serves corpus fingerprint {served}, this stream "
                       f"reads {self.fingerprint}: refused as a replica")
                self.refused[self.replica] = why
                client.close()
                raise ReplicaRefused(why)
        if description["contract_version"] != CONTRACT_VERSION:
            raise RuntimeError(f"the pipeline speaks contract {description['contract_version']}, "
                               f"this reader {CONTRACT_VERSION}")
        reader = client.do_get(info.endpoints[0].ticket, options)
        tokenizer = json.loads(reader.schema.metadata[b"flightlm.tokenizer"])
        if tokenizer != description["tokenizer"]:
            raise RuntimeError("the stream's tokenizer differs from its description")
        if self.tokenizer is not None and tokenizer != self.tokenizer:
            raise RuntimeError("the pipeline came back with another tokenizer")
        self.tokenizer = tokenizer
        return client, reader

    def batches(self):
        """Yields (input_ids [rows, seq_len] int32, block_seq [rows] uint64, record batch); the
        reader's cursor follows the last row of each batch yielded."""
        delay, failing_since, tried = FIRST_DELAY_S, None, 0
        while True:
            client = None
            try:
                client, reader = self._open()
                for chunk in reader:
                    batch = chunk.data
                    if batch.num_rows == 0:
                        continue
                    # flatten() honours slice offsets; .values would not.
                    ids = batch.column("input_ids").flatten().to_numpy()
                    self._last = (batch, batch.num_rows - 1)
                    delay, failing_since, tried = FIRST_DELAY_S, None, 0
                    yield ids.reshape(-1, self.seq_len), batch.column("block_seq").to_numpy(), batch
                    if self._back_to_first:
                        self._back_to_first = False
                        if self.replica != 0 and 0 not in self.refused:
                            self.replica = 0
                            break
                else:
                    return
            except (ReplicaRefused, *RETRYABLE) as error:
                if len(self.replicas) > 1:
                    tried += 1
                    if self._fail_over(tried):
                        continue
                    tried = 0
                elif isinstance(error, ReplicaRefused):
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since + delay > self.retry_s:
                    raise RuntimeError(f"the pipeline at {self.pipeline} stayed unreachable for "
                                       f"{self.retry_s} s: {error}") from error
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
                self.reconnections += 1
            finally:
                if client is not None:
                    client.close()

    def __iter__(self):
        for ids, _, batch in self.batches():
            self._recent.append((self._rows, batch))
            starts = batch.column("document_starts") if self.document_starts else None
            names = (batch.column("source").to_pylist()
                     if "source" in batch.schema.names else [None] * len(ids))
            for row in range(len(ids)):
                # Each row moves the cursor, so a state taken between rows resumes exactly.
                self._last = (batch, row)
                self._rows += 1
                self.source = names[row]
                if starts is None:
                    yield ids[row]
                else:
                    yield ids[row], starts[row].values.to_numpy(zero_copy_only=False)


try:
    import torch
except ImportError:  # the reader itself needs no torch
    torch = None

if torch is not None:

    class FlightlmDataset(torch.utils.data.IterableDataset):
        """A `BlockReader` as an IterableDataset of `{"input_ids": LongTensor[seq_len]}`."""

        def __init__(self, pipeline, seq_len, sources=False, **options):
            super().__init__()
            # With sources=True each row also carries "source": the name of its source.
            self.sources = sources
            self.reader = BlockReader(pipeline, seq_len, **options)

        def __iter__(self):
            worker = torch.utils.data.get_worker_info()
            if worker is not None and worker.num_workers > 1:
                raise RuntimeError("FlightlmDataset reads one stream: use num_workers=0 (the "
                                   "pipeline does the tokenizing)")
            if self.reader.split == "valid":
                # An eval dataset: every evaluation scores the whole split, from its start.
                self.reader.load_state_dict(self.reader.state_dict() | {"cursor": None})
            for block in self.reader:
                extra = {"source": self.reader.source} if self.sources else {}
                if not self.reader.document_starts:
                    yield {"input_ids": torch.from_numpy(block.astype(np.int64))} | extra
                    continue
                ids, starts = block
                yield {"input_ids": torch.from_numpy(ids.astype(np.int64)),
                       "position_ids": torch.from_numpy(position_ids(starts, len(ids)))} | extra

        def state_dict(self, rows=None):
            return self.reader.state_dict(rows)

        def load_state_dict(self, state):
            self.reader.load_state_dict(state)

        def load_checkpoint(self, checkpoint_dir):
            """Continues after the position `FlightlmStateCallback` saved in an HF checkpoint."""
            with open(os.path.join(checkpoint_dir, STATE_FILE), encoding="utf-8") as handle:
                self.load_state_dict(json.load(handle))

    try:
        from transformers import TrainerCallback
    except ImportError:  # the dataset itself needs no transformers
        TrainerCallback = None

if torch is not None and TrainerCallback is not None:

    class FlightlmStateCallback(TrainerCallback):
        """Saves a `FlightlmDataset`'s position into every HF `Trainer` checkpoint (STATE_FILE),
        after the last block trained: the Trainer's DataLoader reads ahead of the step it trains,
        so the dataset's own position is past it. To resume, `dataset.load_checkpoint(dir)` and
        train with `ignore_data_skip=True` (the Trainer would otherwise replay the trained
        batches from the stream to skip them)."""

        def __init__(self, dataset):
            self.dataset = dataset
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            # accelerate has rank 0 read the batches of every rank from an iterable dataset.
            rows_per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps
                             * args.world_size)
            rows = (state.global_step - self.first_step) * rows_per_step
            checkpoint_dir = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            with open(os.path.join(checkpoint_dir, STATE_FILE), "w", encoding="utf-8") as handle:
                json.dump(self.dataset.state_dict(rows), handle)
