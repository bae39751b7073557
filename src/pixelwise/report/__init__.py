"""Results for people: console tables now; plots and the HTML report build on these."""
