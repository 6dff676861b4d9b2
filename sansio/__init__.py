"""The sans-IO cores: byte and state machines that never touch a socket or a clock.

`sansio.actions` is the contract between the hub and the app it runs: the actions an app returns
and the methods the hub calls on it."""
