"""Reads a flightlm stream row by row with `flightlm_stream.BlockReader`, in legs: each leg is a
new reader started from the previous leg's `state_dict()` (taken mid-batch), as a PyTorch loop
resuming from a checkpoint would. Prints one JSON object: every block read, the final state and
the readers' reconnections.

Usage: block_reader_state.py URL SEQ_LEN BATCH_SIZE LEG_BLOCKS...
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from flightlm_stream import BlockReader  # noqa: E402


def main():
    url, seq_len, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    state, blocks, reconnections = None, [], 0
    for leg_blocks in map(int, sys.argv[4:]):
        reader = BlockReader(url, seq_len, batch_size=batch_size, epochs=1, state=state,
                             retry_s=30)
        for index, block in enumerate(reader):
            blocks.append(block.tolist())
            if index + 1 == leg_blocks:
                break
        state = reader.state_dict()
        reconnections += reader.reconnections
    print(json.dumps({"blocks": blocks, "state": state, "reconnections": reconnections}))


if __name__ == "__main__":
    main()
