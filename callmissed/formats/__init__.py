"""Wire formats of the APIs we serve: checks, codecs and the fixes each needs."""
