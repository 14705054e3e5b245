"""How faces are drawn from a generator, agreed by sampling, serving, export and the command line;
free of torch so the CLI's parsers import it without paying for torch."""

from __future__ import annotations

# BatchNorm at sampling time: "eval" uses the running averages, "batch" each batch's statistics.
BN_MODES = ("batch", "eval")
# The running averages gave samples closer to the data (SWD) than batch statistics on the seed
# architecture (docs/guide.md, "BatchNorm at sampling time"), and make a face independent of its batch.
DEFAULT_BN_MODE = "eval"

# Faces are drawn in fixed chunks: the noise of face i depends only on (seed, i // CHUNK), and with
# batch-statistics BatchNorm a face's look also depends on its batch, so batches are always whole
# chunks. Together this makes "same seed, same faces" hold whatever -n or batch size is asked for.
CHUNK = 64
