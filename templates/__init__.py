"""Jinja2 templates shared by inletsctl (cloud-init user-data, systemd units, client command).

Shipped inside the wheel as the package ``provisioner.templates`` so a non-editable
install finds them; Terraform's userdata module (issue 7) renders the same documents.
"""
