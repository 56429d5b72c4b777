"""Networks that more than one method or recipe builds: plug-ins depend on these, never on each other."""
