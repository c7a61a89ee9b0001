"""Reads a flightlm stream row by row with `flightlm_stream.BlockReader`, in legs: each leg is a
new reader started from the previous leg's `state_dict()` (taken mid-batch), as a PyTorch loop
resuming from a checkpoint would. A leg `N:K` reads N blocks but trains on (keeps) only the
first K, as a DataLoader that read ahead, and saves `state_dict(rows=K)`. Prints one JSON object:
every block kept, the final state and the readers' reconnections.

Usage: block_reader_state.py URL SEQ_LEN BATCH_SIZE LEG...   (LEG: N or N:K)
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from flightlm_stream import BlockReader  # noqa: E402


def main():
    url, seq_len, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    state, blocks, reconnections = None, [], 0
    for leg in sys.argv[4:]:
        read, _, kept = leg.partition(":")
        read = int(read)
        kept = int(kept) if kept else read
        reader = BlockReader(url, seq_len, batch_size=batch_size, epochs=1, state=state,
                             retry_s=30)
        for index, block in enumerate(reader):
            if index < kept:
                blocks.append(block.tolist())
            if index + 1 == read:
                break
        state = reader.state_dict(rows=kept)
        reconnections += reader.reconnections
    print(json.dumps({"blocks": blocks, "state": state, "reconnections": reconnections}))


if __name__ == "__main__":
    main()
