"""``--generate``: what runs an ``inlets`` command as a service (systemd: service.py; Kubernetes: k8s.py)."""
