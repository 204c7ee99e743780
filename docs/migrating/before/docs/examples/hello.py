# example
print("hello")
