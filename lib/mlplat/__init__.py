"""mlplat: runbook notebooks and a library that turn bare-metal GPU servers into a Kubeflow
training platform. See README.md and DESIGN notes in the repository."""

__version__ = "0.1.0"
