"""The cluster's health: built-in and application checks, liveness and readiness."""
