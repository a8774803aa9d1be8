"""Deployment configs: robot/<name>.yaml, one per robot (a hydra search path of configs/deploy.yaml)."""
