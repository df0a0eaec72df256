"""latentcot.models"""
