"""The transports: each kind of socket as an object with the same verbs (asyncio's transports),
and the hub that owns the connection table and drives the app. Imports reactor, policy and
sansio; never protocol, rooms or cluster."""
