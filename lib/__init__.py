"""Modules the top-level ones share. `lib.actions` is the contract between the reactor and the
app it runs: the actions an app returns and the methods the reactor calls on it."""
