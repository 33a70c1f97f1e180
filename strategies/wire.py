"""Names that cross the wire: message types, record names, config and metric keys.

Both the ServerApp side (strategies) and the ClientApp side (flower_app)
import them from here, so a rename happens in one place.
"""

# Message types (Flower routes "<category>.<action>" to the matching handler).
QUERY = "query"
TRAIN = "train"
SPLIT_FORWARD = "train.split_forward"
SPLIT_BACKWARD = "train.split_backward"
UPLOAD = "train.upload"
LOCAL = "train.local"
EVALUATE = "evaluate"

# Record names inside a message's RecordDict.
ARRAYS = "arrays"            # trainable tensors (global prefix down, updated prefix up)
ACTIVATIONS = "activations"  # boundary activations, masks and labels of a batch plan
GRADIENTS = "gradients"      # boundary gradients, one per planned minibatch
CONFIG = "config"
METRICS = "metrics"
PROFILE = "profile"          # what a client reports about itself in a query reply
UPLOAD_RECORD = "upload"     # centralized mode: a client's samples or activations, in chunks

# Config keys (server -> client).
SERVER_ROUND = "server-round"
SEED = "seed"
STEPS = "steps"
BATCH_SIZE = "batch-size"
LR = "lr"
MODE = "mode"
GROUP = "group"
ACTIVATION_DTYPE = "activation-dtype"
HEAD_LR = "head-lr"
EMULATOR_LAYERS = "emulator-layers"    # local mode: upper layers the emulator keeps (0: all)
LOCAL_EVAL_SIZE = "local-eval-size"    # local mode: held-back samples for the threshold check
UPLOAD_KIND = "upload-kind"            # centralized mode: "activations" or "samples"
UPLOAD_ROWS = "upload-rows"            # centralized mode: samples to upload (fits the energy budget)
POLICY = "policy"
THRESHOLD_FLOPS = "threshold-flops"    # the capability threshold of a threshold policy, FLOP/s
ALLOC_PREFIX = "alloc-"                # alloc-tx-power-w, alloc-cpu-hz, alloc-energy-budget-j
OVER_BUDGET = "alloc-over-budget"      # the mode does not fit the energy budget: run at full speed

# Profile / metric keys (client -> server).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"      # data volume behind a contribution: the aggregation weight
NUM_AVAILABLE = "num-available"    # samples a client holds (the ceiling for num-examples)
TRAIN_LOSS = "train-loss"
LOSS = "loss"
ACCURACY = "accuracy"
STEPS_DONE = "steps-done"          # minibatches trained before the time limit
LOCAL_PREFIX = "local-"            # local-accuracy, local-loss: the client's own evaluation

# Array name patterns in an activations / gradients record (i: minibatch index).
def activation_key(i: int) -> str:
    return f"act.{i}"


def mask_key(i: int) -> str:
    return f"mask.{i}"


def label_key(i: int) -> str:
    return f"label.{i}"


def gradient_key(i: int) -> str:
    return f"grad.{i}"
