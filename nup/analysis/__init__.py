"""Reading results: sweep-frame accessors, power-law fits, best-learning-rate selection, catapult phases,
coordinate checks."""
