"""Any video benchmark: ``python -m eval --benchmark ucf101 --split 1 --data /data/ucf101 --checkpoint ucf.pth``.

Presets: kinetics400/600/700 (official CSVs), ucf101 (classInd.txt + testlist0N.txt), hmdb51
(<class>_test_splitN.txt), list (``path label`` lines), folders (class folders), unlabelled (video files or
frame folders: predictions only). The views default to the model's published test (``--views SxT``).
Outputs, resume and torchrun work as for ``python -m eval.kinetics`` (see README).
"""
import sys

from eval.score.cli import main

if __name__ == '__main__':
    sys.exit(main('python -m eval', __doc__))
