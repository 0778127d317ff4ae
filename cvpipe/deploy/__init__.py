"""Deployment helpers beyond one machine (Kubernetes manifests for the built Bento image)."""
