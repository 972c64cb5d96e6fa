"""voiceloop past one machine: workers hold calls, a gateway places them, admission by measured capacity.

Ray owns membership, placement, resources and restarts; voiceloop owns where a call goes
(:mod:`.admission`), the workers that hold calls (:mod:`.worker`), the gateway that places them and
fails them over (:mod:`.gateway`) and the per-turn checkpoints that make failover keep the
conversation (:mod:`.history`). ``voiceloop serve --ray auto`` is this package behind a flag; docs/cluster.md
says how to run it. Importing it does not import Ray (``pip install 'voiceloop[cluster]'`` does).
"""

from .admission import AdmissionOptions, Load
from .connect import connect
from .gateway import ClusterCalls, ClusterOptions
from .worker import WorkerSpec

__all__ = ["AdmissionOptions", "ClusterCalls", "ClusterOptions", "Load", "WorkerSpec", "connect"]
