"""A Darcy-flow surrogate, end to end: data -> torchrun training -> evaluation -> inference -> comparison.

    orch run experiment.py --params params/default.yaml     # one model, a few minutes on a laptop CPU
    orch run experiment.py --params params/sweep.yaml       # a small grid over width and learning rate

The permeability fields and their numerical solutions (stages/data.py) are generated once and shared
by every parameter set that uses the same data.* parameters; training runs external/train.py under
torchrun (stages/train.py); evaluation and inference reload the stored checkpoint (stages/evaluate.py);
the comparison table and plot cover all parameter sets (stages/compare.py). Re-running is instant:
only what a changed parameter or file affects runs again.
"""

from stages.compare import compare
from stages.data import make_dataset
from stages.evaluate import evaluate, predict
from stages.train import train


def run(record):
    make_dataset(record)
    train(record)
    evaluate(record)
    predict(record)


def aggregate(records):
    compare(records)
