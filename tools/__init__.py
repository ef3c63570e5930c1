"""Commands, grouped by what they are for (env, data, weights, eval, experiments, studio, bench): each a thin
command over the jmodels package. Only the tests import them; they import nothing from each other."""
