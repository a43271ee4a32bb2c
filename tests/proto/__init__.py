"""Tests of the protocol modules, without Home Assistant."""
