"""Statistics: roll-ups kept with every movement, and the figures read from them."""
