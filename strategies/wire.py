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
EVALUATE = "evaluate"

# Record names inside a message's RecordDict.
ARRAYS = "arrays"            # trainable tensors (global prefix down, updated prefix up)
ACTIVATIONS = "activations"  # boundary activations, masks and labels of a batch plan
GRADIENTS = "gradients"      # boundary gradients, one per planned minibatch
CONFIG = "config"
METRICS = "metrics"
PROFILE = "profile"          # what a client reports about itself in a query reply

# Config keys (server -> client).
SERVER_ROUND = "server-round"
SEED = "seed"
STEPS = "steps"
BATCH_SIZE = "batch-size"
LR = "lr"
MODE = "mode"
GROUP = "group"
ACTIVATION_DTYPE = "activation-dtype"

# Profile / metric keys (client -> server).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"      # data volume behind a contribution: the aggregation weight
NUM_AVAILABLE = "num-available"    # samples a client holds (the ceiling for num-examples)
TRAIN_LOSS = "train-loss"
LOSS = "loss"
ACCURACY = "accuracy"

# Array name patterns in an activations / gradients record (i: minibatch index).
def activation_key(i: int) -> str:
    return f"act.{i}"


def mask_key(i: int) -> str:
    return f"mask.{i}"


def label_key(i: int) -> str:
    return f"label.{i}"


def gradient_key(i: int) -> str:
    return f"grad.{i}"
