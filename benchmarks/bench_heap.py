"""What zoo.heap.keep_freed_memory saves: minor page faults per forward pass of a small 3D ConvNet whose
activations (51 MB) are past glibc's mmap threshold, with the heap kept and with glibc's default, each in its
own process (the setting is process-wide). The saving depends on the kernel: with transparent huge pages
'always' a fault can map 2 MiB instead of 4 KiB and the default heap faults far less (19x here), so this is measured
here and printed with the machine's THP setting, never asserted in tests (tests/test_heap.py checks what
malloc does, which does not depend on the kernel).

    python -m benchmarks.bench_heap            # prints one line per heap and the THP setting
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THP = '/sys/kernel/mm/transparent_hugepage/enabled'

PROBE = '''
import resource, sys, time, torch
import zoo
zoo.keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv3d(3, 16, 1), torch.nn.ReLU(),
                          torch.nn.Conv3d(16, 16, (1, 3, 3), padding=(0, 1, 1)), torch.nn.ReLU(),
                          torch.nn.MaxPool3d((1, 2, 2)), torch.nn.Conv3d(16, 32, 1)).eval()
x = torch.randn(8, 3, 8, 112, 112)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.no_grad():
    for _ in range(3):
        net(x)
    before, start = faults(), time.perf_counter()
    for _ in range(5):
        net(x)
import zoo.heap
print(zoo.heap._applied, (faults() - before) / 5, (time.perf_counter() - start) / 5)
'''
ACTIVATION_PAGES = 8 * 16 * 8 * 112 * 112 * 4 // 4096      # 12,544 pages of 4 KiB per activation


def measure(keep: str) -> str:
    env = dict(os.environ, PYTHONPATH=REPO, ZOO_KEEP_HEAP=keep)
    out = subprocess.run([sys.executable, '-c', PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    applied, faults, seconds = out[0] == 'True', float(out[1]), float(out[2])
    return (f'heap {"kept" if applied else "default"}: {faults:,.0f} minor faults per pass '
            f'({faults / ACTIVATION_PAGES:.2f} activations of 4 KiB pages), {1000 * seconds:.1f} ms per pass')


def main() -> None:
    thp = open(THP).read().strip() if os.path.exists(THP) else 'unknown'
    print(f'transparent huge pages: {thp}')
    for keep in ('0', '1'):
        print(measure(keep))


if __name__ == '__main__':
    main()
