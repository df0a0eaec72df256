"""latentcot.eval"""
