"""The machinery a first reading skips. (This file makes it a package no other plumbing shadows.)"""
