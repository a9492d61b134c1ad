"""The ``train.jpeg_phase`` experiment (BENCHMARKS.md): ``prep`` builds the data, ``run.sh`` trains
with ``zero.yaml`` or ``test.yaml`` and prints the test accuracy, ``eval_phases`` scores a trained
run at other JPEG phases. The shell script and the two profiles live beside the modules they go with."""
