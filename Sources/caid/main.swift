print("caid")
