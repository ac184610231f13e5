"""Small agent programs that several test modules run."""

# Count from 0 up to the input n; returns n (at least 1). Energy grows linearly with n.
COUNT = """
    push 0
    store i
loop:
    load i
    push 1
    add
    store i
    load i
    load n
    lt
    jump_if loop
    load i
    return
"""
