"""The Helm chart rendered and linted by the real helm binary (`make cluster-bin` builds it into .cluster/bin)."""
