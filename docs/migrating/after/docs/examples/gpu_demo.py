# pytest: require_gpu
print("generated on the GPU")
