"""Trust in what clients send: screening split clients, their reputation, volume caps and FLTrust."""
