"""Restaurant recommendation: click data, the RankNet model, training and serving."""
