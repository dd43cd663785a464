"""Kinetics multi-view testing of a zoo model (the Caffe2 video-nonlocal-net protocol by default).

    python -m eval.kinetics --model i3d_r50 --data /data/kinetics --views 3x10   # 10 clips x 3 crops of 256
    python -m eval.kinetics --model i3d_r50 --data /data/kinetics --views 1x1    # centre clip, centre 224 crop
    python -m eval.kinetics                                                      # embedded demo, no data needed

--data is a Kinetics annotation CSV (videos beside it), a folder holding one (in it or in its annotations/
folder, videos under frames/, videos/ or the folder itself), or use --annotations; a ``path label`` list
file; a folder of class folders; or a folder of unlabelled videos (predictions only). Prints the FLOP
report, a progress bar, then top-1 / top-5 / mean class accuracy; writes scores.npz, predictions.csv,
failures.csv and summary.json under --out (default runs/<model>-<views>-<time>).

Launched by torchrun, every rank scores its share of the videos and rank 0 writes the results:

    torchrun --nproc_per_node 8 -m eval.kinetics --model i3d_r50 --data /data/kinetics --out runs/i3d

Scores are stored in --out as they are produced; the same command again resumes where it stopped.
Exit status: 0 when videos were scored and decode failures stay within --max-failed, 1 when the run
produced nothing useful (outputs still written), 2 for bad flags / data / --out, 3 when a rank failed.
The Kinetics preset of the generic engine (python -m eval --benchmark ...).
"""
import sys
from typing import List, Optional

from eval.score.cli import main as cli_main


def main(argv: Optional[List[str]] = None) -> int:
    return cli_main('python -m eval.kinetics', __doc__, argv, benchmark='kinetics400')


if __name__ == '__main__':
    sys.exit(main())
