"""The runtime layer: the runner, its control planes, claims, jobs, leases and health.

This layer owns what happens between a wake on the wire and a handler's
ack: :mod:`.runner` drives the lifecycle machine and implements its effects,
with :mod:`.wakestream` (connecting to and consuming the wake stream);
:mod:`.ports` holds the protocols between the runner and what it drives
(the runtime, the control plane, and the runner's port they report
upward through); :mod:`.control` and :mod:`.subscriptions` are the control planes (claim,
ack, release, heartbeat); :mod:`.claims` schedules one claim per key;
:mod:`.heartbeat` keeps the runner's lease; the worker's runtime is
:mod:`.dispatch` (jobs, acks, releases) with :mod:`.attempts` (handler
runs), :mod:`.leases` (claim leases), :mod:`.recovery` (what a restarted
server forgot) and :mod:`.wake` (a wake and its stream reads); :mod:`.failures` holds the
handler-failure policy and dead-letter records; :mod:`.health` is the one
health model; the one config is :mod:`.config` (RunnerConfig,
SubscriptionConfig) and :mod:`.worker_config` (the WorkerConfig that contains
them), with :mod:`.settings` the field metadata the CLI derives its options
from; :mod:`.logs` the log context, formats and the adapter every runner and
worker logs through.

It talks to the network only through :mod:`pullwake.io` and never imports
:mod:`pullwake.ops`, :mod:`pullwake.worker` or :mod:`pullwake.cli`.
"""
