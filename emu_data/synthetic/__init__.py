"""The generated sample world, the sample corpus and the offline sample site."""
