"""The policies: small rules with no sockets and no clock of their own, each answering one
question (how much may it spend now, whose turn is it, who makes way). Time is always given."""
