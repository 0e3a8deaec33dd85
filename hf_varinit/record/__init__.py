"""(2) model -> statistics -> variance.safetensors."""

STAT_NAMES = ("mean", "var", "second_moment")  # the statistics recorded per tracked tensor
