"""kubelet's probers (``pkg/probe``) and prober worker (``pkg/kubelet/prober``) as a library.

``http``, ``tcp`` and ``exec`` each run one probe and answer a :class:`ProbeResult`; ``netns``
makes the sockets the network probes use inside the pod's network namespace; ``worker`` turns
single results into kubelet's thresholded startup/liveness/readiness result, one asyncio task
per probe.
"""
