"""latentcot.decoding"""
