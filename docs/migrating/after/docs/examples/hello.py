# pytest:
print("hello")
