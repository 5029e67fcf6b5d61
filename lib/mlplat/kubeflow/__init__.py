"""Kubeflow's manifests: where they come from (offline bundle or git), their remote bases and the
offline kit, and the offline build with pull-policy and image-mirror patches (phase 50)."""
