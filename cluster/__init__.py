"""Tide on a cluster: `ray up` YAMLs (aws, gcp, local) and the `tide` cluster commands.

validate: Ray's own check of a cluster YAML; launch: `tide up`/`down` around Ray's launcher; build: Serve config
and KubeRay manifests; status: the `tide status` table; cli: the subcommands. See cluster/README.md.
"""
