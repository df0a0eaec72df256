"""latentcot.analysis"""
