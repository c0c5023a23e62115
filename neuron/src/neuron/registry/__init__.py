"""Which models this neuron has, in which state, and the single-flight load/unload of each.

States: ``loading → ready → unloading`` (then gone), and ``failed`` (start failed, or the
engine exited on its own; the entry stays, with the reason, until it is unloaded or loaded
again). The residency ladder adds ``ready → sleeping → waking → ready``: a sleeping model
keeps its engine process (vLLM sleep mode: weights in host RAM, little GPU memory), and is
woken by a wake command, a load of it, or a request for it (one wake, whoever asks).

Sleep and wake go through the same authority as load and unload: fenced by the epoch, a
sleep refused (409 ``model_busy``) while requests are in flight, single-flight per model. A
model evicted to make room sleeps instead of stopping while ``[sleep]`` budgets allow (host
RAM for every model that has begun a sleep since its engine started, charged as the sleep
begins so that concurrent sleeps cannot overshoot it, and ``max_sleeping_models``).
A wake whose engine fails, or whose canary token differs from the one recorded before its
first sleep, stops that engine and loads the model afresh.

Concurrency contract, per model id:
- a load while ``loading`` joins that start; while ``ready`` returns at once; there is never
  more than one engine for a model;
- a load while ``unloading`` waits for the unload, then starts afresh; a load of a ``failed``
  model replaces the failed entry;
- an unload while ``loading`` cancels the start (the engine is stopped) and joining loads
  get 409 ``load_cancelled``; concurrent unloads share one stop.

Authority (several cortex replicas, one neuron): every change of a model's state (placed,
ready, failed, unloading, gone) bumps :attr:`Registry.epoch`, which with the per-boot
:attr:`Registry.instance` names one state of this neuron. A command (load, unload, sleep,
wake) may carry the epoch its sender's decision was based on: if the state has
moved on since, it raises :class:`StaleEpoch` and changes nothing (:meth:`Fence.check
<neuron.registry.fence.Fence.check>`, which every command reuses). A load of a model already
loading or ready is answered from that state before the fence: it starts nothing, whatever
its epoch; so are an unload of a model already unloading (it waits for that stop) and a
sleep or wake of a model already there or on its way (it waits for that one, and shares its
outcome). A command may also name the boot its epoch belongs to (``instance``); an epoch of
another boot is :data:`OTHER_BOOT` (:meth:`Registry.stamp`), which the fence always refuses.
A model with requests in flight is never unloaded or evicted, unless its unload was asked to
wait for them (``Busy.WAIT``) or the neuron is shutting down (``Busy.CUT``)."""

from neuron.registry.authority import Registry
from neuron.registry.fence import OTHER_BOOT
from neuron.registry.ladder import Sampler
from neuron.registry.slot import ALIVE, ASLEEP, Busy, Slot, State

__all__ = ["ALIVE", "ASLEEP", "OTHER_BOOT", "Busy", "Registry", "Sampler", "Slot", "State"]
