"""BlockReader over two pipeline replicas, driven by the test through stdin/stdout.

    python replica_reader.py URL_A,URL_B SEQ_LEN BATCH BLOCKS_PER_LEG OTHER_URL

Reads BLOCKS_PER_LEG blocks, prints {"leg": ..., "url": ...} and waits for a line on stdin
between legs: the test SIGKILLs the first replica after leg 1 (leg 2 reads on until the reader
has moved to the second, however much of the first's stream was in flight, then
BLOCKS_PER_LEG more), restarts it after leg 2 and says "back" (the reader is asked to return to
the first; leg 3 must come from it). Then a reader resumed from the state after leg 3 with OTHER_URL (another corpus)
listed first must refuse it by name and read leg 4 from the first replica. Prints the blocks of
the four legs and what was refused as one JSON line.
"""

import json
import sys

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/python")
from flightlm_stream import BlockReader  # noqa: E402

urls, seq_len, batch, per_leg, other = sys.argv[1:6]
seq_len, batch, per_leg = int(seq_len), int(batch), int(per_leg)


def leg(reader, iterator, name, until_failover=False):
    blocks = []
    while until_failover and reader.failovers == 0 and len(blocks) < 1_000_000:
        blocks.append(next(iterator).tolist())
    blocks += [next(iterator).tolist() for _ in range(per_leg)]
    print(json.dumps({"leg": name, "url": reader.url, "failovers": reader.failovers}), flush=True)
    return blocks


reader = BlockReader(urls, seq_len, batch_size=batch, retry_s=60)
rows = iter(reader)
blocks = leg(reader, rows, 1)
sys.stdin.readline()  # the first replica is gone
blocks += leg(reader, rows, 2, until_failover=True)
command = sys.stdin.readline().strip()  # the first replica is back
if command == "back":
    reader.return_to_first()
blocks += leg(reader, rows, 3)
state = reader.state_dict()

resumed = BlockReader([other, reader.replicas[0]], seq_len, batch_size=batch, state=state,
                      retry_s=60)
more = iter(resumed)
blocks += leg(resumed, more, 4)
print(json.dumps({"blocks": blocks, "refused": list(resumed.refused.values())}), flush=True)
