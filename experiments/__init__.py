"""Experiments: A/B statistics, off-policy evaluation, tracked simulations, tuning, promotion.

Only :mod:`experiments.tracking` and :mod:`experiments.model_registry` import MLflow, and
only inside their functions; this package's import pulls in numpy/scipy only.

Modules: ``ab`` (offline A/B on the simulator; its statistics are :mod:`bandit.abstats`), ``ope``
(IPS / SNIPS / doubly robust, and their kernel versions for continuous floors), ``jitter``
(continuous floor exploration around any policy's floors), ``simulate`` (tracked
simulation runs), ``tracking`` (MLflow), ``model_registry`` (promote / load the champion),
``tune`` (Ray Tune), ``config`` (policy config files), ``plots``, ``report`` (README
figures), ``cli``.
"""

from bandit.abstats import LiftResult, paired_lift, unpaired_lift
from experiments.config import PolicyConfig, policy_from_file, read_policy_config, write_policy_config

__all__ = [
    "LiftResult",
    "PolicyConfig",
    "paired_lift",
    "policy_from_file",
    "read_policy_config",
    "unpaired_lift",
    "write_policy_config",
]
