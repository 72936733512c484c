"""Offline checks of what ships the services: Dockerfiles, docker-compose.yml and the Kubernetes manifests."""
