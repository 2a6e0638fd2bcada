"""Operations: readiness/liveness health, Prometheus metrics, the call interceptor (API key, request ids, logs)."""
